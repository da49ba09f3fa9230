"""masklab.serve"""
