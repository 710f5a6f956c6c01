"""The web shell on top of every other layer: the HTTP app, its schemas, media serving and the static page.

Installed as ``prvr.services`` (setup.cfg maps this folder there); nothing below it imports it.
"""
