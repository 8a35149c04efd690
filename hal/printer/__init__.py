"""hal/printer"""
