"""Metrics: scores of edits (structure preservation, prompt adherence, time, ...).

Each metric fills columns of ``results.csv`` (one row per edit). Columns, direction, source:

================== ============================== ===============================================
metric             columns                        meaning
================== ============================== ===============================================
lpips              lpips, lpips_bg                LPIPS input vs edit (↓); _bg: background only
clip_score         clip_score, clip_score_edited  100·max(cos(CLIP img, CLIP txt), 0) with the
                                                  target prompt (↑); _edited: edited region only
psnr / ssim / mse  psnr[_bg], ssim[_bg], mse[_bg] pixel fidelity to the input; _bg = PIE-Bench's
                                                  background preservation
structure_distance structure_distance             DINO ViT key self-similarity distance (↓);
                                                  convention: pie_bench for PIE-Bench's 0-255 input
pie_bench          structure_distance_x1e3, …     PIE-Bench's table (its names, its scales; see
                                                  plugins/metrics/pie_bench.py)
diversity          diversity                      mean pairwise LPIPS across seeds (↑)
reconstruction     reconstruction_psnr            PSNR of the source-prompt reconstruction (↑)
================== ============================== ===============================================

The *_bg / *_edited columns need a mask (1 = edited region, e.g. PIE-Bench's) and are empty
without one. Network weights: a hub id or a local path in the options (``weights`` for
lpips/diversity, ``model`` for clip_score/structure_distance); ``on_missing: skip`` leaves the
columns empty instead of failing when weights are absent.
"""
