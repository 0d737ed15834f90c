"""soundry.audio"""
