"""Analysis of runs and sweeps: workdir readers (`runs`), per-layer variance at initialisation
(`variance`, paper Eqs. 9 and 13), learned slopes beside Table 1 (`slopes`), dead units
(`dead_units`), error curves (`curves`), reports against the paper's numbers (`report`, `paper`)
and sweep tables (`sweep_table`). Importing it loads no JAX."""
