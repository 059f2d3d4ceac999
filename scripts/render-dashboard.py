#!/usr/bin/env python3
"""render-dashboard.py DATA.json OUT.png — draws the Grafana dashboard's panels
(deploy/grafana/ppd-dashboard.json) with gnuplot from the range queries that
tests/integration/test_deploy.py ran on a real Prometheus during
scripts/check-deploy.sh's load, laid out two panels per row like the dashboard.

This is a plotted substitute for a Grafana screenshot (no Grafana package in
this machine's registries): the queries and the data are the dashboard's, the
drawing is gnuplot's.  Needs only the standard library and gnuplot (pngcairo)."""
import json
import math
import os
import subprocess
import sys
import tempfile

UNIT_LABEL = {"s": "seconds", "reqps": "requests/s", "percentunit": "fraction", "bytes": "MiB", "short": ""}


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(data_path, out_path):
    with open(data_path) as f:
        data = json.load(f)
    panels = data["panels"]
    cols, rows = 2, math.ceil(len(panels) / 2)
    tmp = tempfile.mkdtemp(prefix="ppd-dash-")
    w, h = 1400, 330 * rows + 60
    gp = [f"set terminal pngcairo size {w},{h} font 'DejaVu Sans,9' noenhanced",
          f"set output {quote(out_path)}",
          f"set multiplot layout {rows},{cols} title "
          + quote(f"ppd dashboard (plotted substitute for Grafana): {data['seconds']:.0f} s of a real Prometheus "
                  f"scraping ppd serve every 1 s; rate windows {data['rate_interval']}") + " font ',12'",
          "set grid", "set key top left font ',8' opaque", "set xlabel 'seconds'", "set datafile missing 'NaN'",
          "set border lw 0.8", "set lmargin 10",
          # Headroom above the highest line, so a flat series at its maximum stays visible.
          "set offsets 0, 0, graph 0.12, 0", "set yrange [0:*]"]
    for i, p in enumerate(panels):
        scale = 1 / (1 << 20) if p["unit"] == "bytes" else 1
        gp.append(f"set title {quote(p['title'])} font ',10'")
        gp.append(f"set ylabel {quote(UNIT_LABEL.get(p['unit'], p['unit']))}")
        plots = []
        for j, s in enumerate(p["series"]):
            path = os.path.join(tmp, f"p{i}s{j}.dat")
            with open(path, "w") as f:
                for t, v in s["values"]:
                    ok = v == v and not math.isinf(v)
                    f.write(f"{t:.3f} {v * scale:.6g}\n" if ok else f"{t:.3f} NaN\n")
            plots.append(f"{quote(path)} using 1:2 with lines lw 2 title {quote(s['label'])}")
        if plots:
            gp.append("plot " + ", ".join(plots))
        else:
            gp.append("set label 1 'no data' at graph 0.45, graph 0.5")
            gp.append("plot [0:1] [0:1] NaN notitle")
            gp.append("unset label 1")
    gp.append("unset multiplot")
    script = os.path.join(tmp, "dash.gp")
    with open(script, "w") as f:
        f.write("\n".join(gp) + "\n")
    subprocess.run(["gnuplot", script], check=True)
    print(f"render-dashboard: wrote {out_path} ({len(panels)} panels)", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
