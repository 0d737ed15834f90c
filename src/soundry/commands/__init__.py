"""soundry.commands"""
