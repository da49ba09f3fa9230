"""masklab.models"""
