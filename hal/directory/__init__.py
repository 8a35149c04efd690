"""hal/directory"""
