# Sourced by scripts/install-deps and scripts/fetch-qemu.
#
# A private apt configuration: the system's own Debian mirror with the release's main,
# -updates, -security and -backports suites, with its own package lists and download cache
# under .cache/apt. Looking packages up or downloading them through it never changes the
# system's sources list or lists (apt's Dir::Etc::SourceList, Dir::State::Lists and
# Dir::Cache options); only an explicit install through it changes the installed packages.

private_apt_dir=${PRIVATE_APT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.cache/apt}
private_apt=()

# Writes the configuration (once) and fills the private_apt array with apt's options.
private_apt_init() {
    local codename mirror security
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || { echo "private apt: /etc/os-release names no Debian release" >&2; return 1; }
    # The mirrors the system already uses, so nothing here names a host of its own.
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
        awk -v s="$codename" '$2 == s { print $1; exit }')
    security=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
        awk -v s="$codename-security" '$2 == s { print $1; exit }')
    if [ -z "$mirror" ]; then
        echo "private apt: no '$codename' suite in the system's apt sources (run apt-get update first?)" >&2
        return 1
    fi
    mkdir -p "$private_apt_dir"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    {
        for suite in "$codename" "$codename-updates" "$codename-backports"; do
            echo "deb [signed-by=$keyring] $mirror $suite main"
        done
        [ -z "$security" ] || echo "deb [signed-by=$keyring] $security $codename-security main"
    } >"$private_apt_dir/sources.list"
    private_apt=(
        -o "Dir::Etc::SourceList=$private_apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=$private_apt_dir/sources.list.d"
        -o "Dir::Etc::Preferences=$private_apt_dir/preferences"
        -o "Dir::Etc::PreferencesParts=$private_apt_dir/preferences.d"
        -o "Dir::State::Lists=$private_apt_dir/lists"
        -o "Dir::Cache=$private_apt_dir/cache"
        -o "APT::Sandbox::User=root"
    )
}

# Refreshes the private lists when they are missing or older than a day.
private_apt_update() {
    local stamp="$private_apt_dir/updated"
    if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
        apt-get "${private_apt[@]}" update -q >&2
        touch "$stamp"
    fi
}

# Prints "VERSION SUITE" for every version of a package the private sources offer.
private_apt_versions() {
    apt-cache "${private_apt[@]}" madison "$1" 2>/dev/null |
        awk -F' *[|] *' '{ split($3, where, " "); split(where[2], suite, "/"); print $2, suite[1] }'
}
