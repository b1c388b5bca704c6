"""realserver"""
