"""masklab.engine"""
