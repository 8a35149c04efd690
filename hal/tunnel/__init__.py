"""hal/tunnel"""
