"""masklab.export"""
