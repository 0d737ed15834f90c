"""soundry.models"""
