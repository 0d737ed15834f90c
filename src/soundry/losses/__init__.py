"""soundry.losses"""
