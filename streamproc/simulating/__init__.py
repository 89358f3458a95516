"""``streamproc simulate``: what these topologies would have done with these detections.

Recorded detections (files or a range of a topic) run through the code that decides live, on
the detections' own time, against a cluster kept in memory; nothing is written anywhere.
"""
