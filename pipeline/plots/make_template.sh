#!/usr/bin/env bash
# Builds offline.html, the page template of `dvc plots show` (.dvc/config: plots.html_template):
# DVC's own page, but with vega, vega-lite and vega-embed inlined instead of loaded from a CDN, so
# the charts draw without a network. Needs npm (run where the registry is reachable); the versions
# are pinned here and written into the page. The three libraries are BSD-3-Clause (see LICENSE-vega).
set -euo pipefail
cd "$(dirname "$0")"
VERSIONS=(vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)
FILES=(vega.min.js vega-lite.min.js vega-embed.min.js)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "${VERSIONS[@]}" >/dev/null)
{
    printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n'
    printf '    <!-- %s, inlined by pipeline/plots/make_template.sh -->\n' "${VERSIONS[*]}"
    for i in 0 1 2; do
        name=${VERSIONS[$i]%@*}
        tar -xzf "$work/$name-${VERSIONS[$i]#*@}.tgz" -C "$work" package/build/"${FILES[$i]}"
        printf '    <script>\n'
        cat "$work/package/build/${FILES[$i]}"
        printf '\n    </script>\n'
    done
    printf '    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n'
    printf '</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n'
} > offline.html.tmp
# vega's package ships no LICENSE file; vega-lite's is the same BSD-3-Clause text of the same authors
tar -xzf "$work/vega-lite-${VERSIONS[1]#*@}.tgz" -C "$work" package/LICENSE
cp "$work/package/LICENSE" LICENSE-vega
mv offline.html.tmp offline.html
echo "wrote $(pwd)/offline.html ($(du -k offline.html | cut -f1) KiB)"
