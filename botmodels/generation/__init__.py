"""Image and video generation, blocking and as jobs (`front`, `jobs`);
runners: `runners/image.py`, `runners/video.py`.
"""
