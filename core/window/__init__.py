"""What the user watches: paced playback, the publisher of the frame shown, ``status.json`` and exports."""
