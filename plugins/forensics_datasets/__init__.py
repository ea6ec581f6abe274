"""placeholder during bootstrap"""
