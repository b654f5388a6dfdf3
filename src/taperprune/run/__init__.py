"""The `taperprune` application: one validated run config, the one fit loop, the pipeline
phases over a typed run state, data, run directory and report (installed with the `cli`
extra). It uses the library below it; the library never imports it."""
