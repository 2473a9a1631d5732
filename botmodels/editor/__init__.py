"""The video editor's routes (botserver's botvideo crate): audio and video by URL."""
