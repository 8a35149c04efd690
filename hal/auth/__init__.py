"""hal/auth"""
