"""`mls doctor`: is this machine's Modal CLI, SDK, Python and profile what you think it is?"""
