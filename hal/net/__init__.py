"""hal/net"""
