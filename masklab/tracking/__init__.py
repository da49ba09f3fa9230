"""Tracking and counting for videos: stable track ids, counting lines, zones, MOT files.

- :class:`MaskTracker` (``tracker.py``): ByteTrack-style association on box and mask IoU, per class,
  with a Kalman motion model, a lost-track buffer, a colour cue and re-identification
  (``appearance.py``); ids land in ``Instances.extra["track_ids"]``.
- :class:`Counter` (``counting.py``): line crossings (``in``/``out`` with hysteresis) and zone entries,
  exits, occupancy and dwell time, from each track's anchor (the mask centroid).
- :class:`TrackDrawer` (``draw.py``): track colours, trails, lines and zones on the annotated video.
- :class:`TrackingSession` (``session.py``): one video's tracker + counter + outputs.
"""

from masklab.tracking.counting import Counter, CountLine, Event, Zone, anchor_points, parse_line, parse_zone
from masklab.tracking.draw import TrackDrawer, track_color
from masklab.tracking.session import TrackingOptions, TrackingSession, tracked_dicts
from masklab.tracking.tracker import TRACK_IDS, MaskTracker, TrackerSettings, TrackUpdate

__all__ = [
    "MaskTracker",
    "TrackerSettings",
    "TrackUpdate",
    "TRACK_IDS",
    "Counter",
    "CountLine",
    "Zone",
    "Event",
    "anchor_points",
    "parse_line",
    "parse_zone",
    "TrackDrawer",
    "track_color",
    "TrackingOptions",
    "TrackingSession",
    "tracked_dicts",
]
