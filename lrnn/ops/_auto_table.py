# ruff: noqa: E501
"""Measured rankings behind ``implementation="auto"`` (generated: do not edit).

Made by ``python -m experiments.bench.auto derive`` from the measurements in
``benchmarks/auto/``; ``lrnn.ops._auto`` reads it. Per backend: where each point was
measured, and at each point the implementations from fastest to slowest (fwd + bwd).
"""

TABLE = {
    'cpu': {
        'source': [
            'cpu.json: cpu, jax 0.10.2, 2026-12-02 15:55 UTC',
            'cpu_selective.json: cpu, jax 0.10.2, 2026-12-04 01:13 UTC',
        ],
        'points': [
            {'family': 'delta', 'dtype': 'float32', 'B': 64, 'T': 40, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 64, 'T': 40, 'H': 1, 'dk': 256, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 1, 'dk': 64, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 1, 'dk': 64, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 1, 'dk': 64, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 1, 'dk': 512, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 1, 'dk': 512, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 1, 'dk': 512, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'delta', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'delta', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'delta', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'delta', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['chunked', 'sequential', 'scan']},
            {'family': 'delta', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['chunked', 'sequential', 'scan']},
            {'family': 'delta', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['chunked', 'sequential', 'scan']},
            {'family': 'delta_product', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 2, 'dk': 16, 'n_h': 2, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'delta_product', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 2, 'dk': 16, 'n_h': 2, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'delta_product', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 2, 'dk': 16, 'n_h': 2, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'gla', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'gla', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'gla', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'gla', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'gla', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'gla', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 1, 'dk': 64, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 1, 'dk': 512, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'delta', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'delta', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['chunked', 'sequential', 'scan']},
            {'family': 'delta_product', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 2, 'dk': 16, 'n_h': 2, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'gla', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 2, 'dk': 16, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
            {'family': 'gla', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['chunked', 'sequential', 'scan']},
            {'family': 'selective', 'dtype': 'float32', 'B': 64, 'T': 40, 'H': 1, 'dk': 1024, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'selective', 'dtype': 'float32', 'B': 64, 'T': 32, 'H': 1, 'dk': 1024, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'selective', 'dtype': 'float32', 'B': 16, 'T': 128, 'H': 1, 'dk': 1024, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'selective', 'dtype': 'float32', 'B': 4, 'T': 512, 'H': 1, 'dk': 1024, 'n_h': 1, 'ranking': ['sequential', 'scan', 'chunked']},
            {'family': 'selective', 'dtype': 'float32', 'B': 1, 'T': 2048, 'H': 1, 'dk': 1024, 'n_h': 1, 'ranking': ['sequential', 'chunked', 'scan']},
        ],
    },
    'gpu': {
        'source': [
            'gpu_h200.json: NVIDIA H200, jax 0.11.2, 2026-12-02 14:58 UTC',
            'gpu_h200_b.json: NVIDIA H200, jax 0.11.2, 2026-12-02 15:14 UTC',
            'gpu_h200_c.json: NVIDIA H200, jax 0.11.2, 2026-12-04 01:15 UTC',
        ],
        'points': [
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 512, 'T': 32, 'H': 1, 'dk': 256, 'n_h': 1, 'ranking': ['chunked', 'scan', 'pallas', 'sequential']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 128, 'T': 128, 'H': 1, 'dk': 256, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked', 'sequential']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 32, 'T': 512, 'H': 1, 'dk': 256, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked', 'sequential']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 8, 'T': 2048, 'H': 1, 'dk': 256, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 2, 'T': 8192, 'H': 1, 'dk': 256, 'n_h': 1, 'ranking': ['scan', 'pallas', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 512, 'T': 32, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['scan', 'sequential', 'chunked', 'pallas']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 128, 'T': 128, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked', 'sequential']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 32, 'T': 512, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked', 'sequential']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 8, 'T': 2048, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 2, 'T': 8192, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked']},
            {'family': 'linear_recurrence', 'dtype': 'float32', 'B': 256, 'T': 40, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['scan', 'sequential', 'chunked', 'pallas']},
            {'family': 'gla', 'dtype': 'float32', 'B': 256, 'T': 40, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['pallas', 'chunked', 'scan', 'sequential']},
            {'family': 'delta', 'dtype': 'float32', 'B': 256, 'T': 40, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['pallas', 'chunked', 'sequential', 'scan']},
            {'family': 'selective', 'dtype': 'float32', 'B': 256, 'T': 40, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked', 'sequential']},
            {'family': 'delta', 'dtype': 'float32', 'B': 2048, 'T': 128, 'H': 8, 'dk': 32, 'n_h': 1, 'ranking': ['pallas', 'chunked', 'sequential', 'scan']},
            {'family': 'delta_product', 'dtype': 'float32', 'B': 2048, 'T': 128, 'H': 8, 'dk': 32, 'n_h': 2, 'ranking': ['pallas', 'sequential', 'chunked']},
            {'family': 'delta_product', 'dtype': 'float32', 'B': 2048, 'T': 128, 'H': 8, 'dk': 32, 'n_h': 4, 'ranking': ['pallas', 'sequential', 'chunked']},
            {'family': 'delta', 'dtype': 'bfloat16', 'B': 256, 'T': 40, 'H': 4, 'dk': 32, 'n_h': 1, 'ranking': ['pallas', 'chunked', 'sequential', 'scan']},
            {'family': 'selective', 'dtype': 'bfloat16', 'B': 256, 'T': 40, 'H': 1, 'dk': 4096, 'n_h': 1, 'ranking': ['pallas', 'scan', 'chunked', 'sequential']},
            {'family': 'delta', 'dtype': 'bfloat16', 'B': 2048, 'T': 128, 'H': 8, 'dk': 32, 'n_h': 1, 'ranking': ['pallas', 'chunked', 'sequential', 'scan']},
        ],
    },
}
