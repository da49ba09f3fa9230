"""masklab.compat"""
