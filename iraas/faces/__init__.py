"""The faces model's parts beside recognition: the gallery as stored (base, enrolments,
removals, its version) and the gallery routes, mounted only when a faces model is served."""
