"""masklab.structures"""
