"""Curation of particle picks: minislabs, gallery pages, accept/reject decisions, ranking, and a
2D particle stack + RELION STAR for 2D classification.

- pick lists in any of the extract-peaks formats are read with `cryocloud.pick.formats.read_picks`;
- `minislab.minislabs`: per-particle projections of thin slabs (along z or the particle's axis);
- `gallery.write_gallery`: PNG pages of minislabs labelled with index and score;
- `decisions`: the accept/reject file written with a gallery and read back;
- `rank`: order by score, or by agreement with the average of the best picks;
- `auto`: automatic accept/reject from that agreement (two-class split, top fraction or minimum);
- `export.export_stack`: MRC stack + RELION STAR.
"""
