#!/usr/bin/env bash
# Install (or remove) the flowerdemo launcher, AppStream metainfo and hicolor icons for the
# current user, under $XDG_DATA_HOME (default ~/.local/share). No root needed.
#
#   packaging/linux/install-desktop.sh              install
#   packaging/linux/install-desktop.sh --uninstall  remove what install put there
#   packaging/linux/install-desktop.sh --data-home DIR   use DIR instead of $XDG_DATA_HOME
set -euo pipefail

app_id="org.flowerdemo.FlowerDemo"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
action="install"

usage() {
    sed -n '2,/^[^#]/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --uninstall) action="uninstall"; shift ;;
        --data-home)
            [[ $# -ge 2 ]] || { echo "install-desktop.sh: --data-home needs a folder" >&2; exit 2; }
            data_home="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-desktop.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

# Every installed path, relative to the data home, paired with its source in this folder.
declare -a sources=() targets=()
sources+=("$here/$app_id.desktop");       targets+=("applications/$app_id.desktop")
sources+=("$here/$app_id.metainfo.xml");  targets+=("metainfo/$app_id.metainfo.xml")
while IFS= read -r -d '' icon; do
    sources+=("$icon")
    targets+=("icons/hicolor/${icon#"$here/icons/hicolor/"}")
done < <(find "$here/icons/hicolor" -type f \( -name "$app_id.png" -o -name "$app_id.svg" \) -print0 | sort -z)

if [[ "$action" == "install" ]]; then
    for i in "${!sources[@]}"; do
        install -D -m 0644 "${sources[$i]}" "$data_home/${targets[$i]}"
        echo "installed $data_home/${targets[$i]}"
    done
else
    for target in "${targets[@]}"; do
        if [[ -e "$data_home/$target" ]]; then
            rm -f "$data_home/$target"
            echo "removed $data_home/$target"
        fi
    done
fi

# Refresh the caches where the tools exist; desktops pick the files up without them too, later.
if command -v update-desktop-database >/dev/null 2>&1; then
    update-desktop-database -q "$data_home/applications" 2>/dev/null || true
fi
if command -v gtk-update-icon-cache >/dev/null 2>&1 && [[ -d "$data_home/icons/hicolor" ]]; then
    gtk-update-icon-cache -q -t -f "$data_home/icons/hicolor" 2>/dev/null || true
fi

if [[ "$action" == "install" ]] && ! command -v flowerdemo >/dev/null 2>&1; then
    echo "note: 'flowerdemo' is not on PATH; the launcher runs 'flowerdemo', so install the" \
         "package (pip install flowerdemo) or put its virtualenv's bin folder on PATH" >&2
fi
