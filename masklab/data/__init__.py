"""masklab.data"""
