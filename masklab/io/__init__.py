"""masklab.io"""
