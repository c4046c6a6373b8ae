"""Analysis of runs and sweeps: workdir readers (`runs`), per-layer variance at initialisation
(`variance`, paper Eqs. 9 and 13) and sweep tables (`sweep_table`). Importing it loads no JAX."""
