"""The Textual app: the only package of sftchat that imports Textual."""
