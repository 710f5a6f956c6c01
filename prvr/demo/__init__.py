"""The embedded demo: a generated corpus of event timelines, a small trained DreamPRVR and its index (`prvr demo`)."""
