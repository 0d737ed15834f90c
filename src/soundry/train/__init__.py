"""soundry.train"""
