"""masklab.evaluation"""
