"""soundry.generate"""
