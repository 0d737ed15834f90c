"""soundry.nn"""
