"""The video editor's domain (botserver's botvideo crate): its audio and video routes."""
