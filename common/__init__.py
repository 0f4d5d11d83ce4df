"""Pieces every role of the kit (training, inference, client, operator scripts) imports.

No role package owns this one and it imports none of them.
"""
