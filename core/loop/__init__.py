"""The dream loop: a session's persisted state, its supervisor (re-queueing), prompt themes,
seed images, keyframe interpolation and the frame writer."""
