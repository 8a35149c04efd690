"""hal/card"""
