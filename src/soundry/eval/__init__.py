"""soundry.eval"""
