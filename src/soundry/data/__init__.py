"""soundry.data"""
