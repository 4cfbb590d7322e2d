#!/usr/bin/env bash
# System packages of the stack and the tests, installed only when missing, on Debian 12/13
# or Ubuntu 24.04. Quick when everything is there (no apt call at all).
#   bash deploy/install_system_deps.sh             # make test: the stack's + wrk, chromium, chromedriver
#   bash deploy/install_system_deps.sh stack       # make up: Java 17+, Maven, redis-server, redis-cli
#   bash deploy/install_system_deps.sh pip         # python3-pip only (bootstrap for `make venv`)
#   bash deploy/install_system_deps.sh choose-jdk  # print the JDK package it would install
# Installs as root, or through sudo; with neither it prints the one command to run.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
MIN_JAVA=17
# Newest first, long-term-support releases only; default-jdk-headless after them.
JDK_PACKAGES=(openjdk-25-jdk-headless openjdk-21-jdk-headless openjdk-17-jdk-headless)

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

# The version apt would install, or nothing (unknown name, or "(none)": no candidate).
candidate() {
  apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" {print $2}'
}

# Java major version of a default-jdk-headless version: 2:1.17-74 -> 17, 2:1.21-75 -> 21.
default_jdk_major() {
  printf '%s\n' "$1" | sed -n 's/^\([0-9]*:\)\{0,1\}1\.\([0-9][0-9]*\).*/\2/p'
}

# The JDK package to install: the newest openjdk-N-jdk-headless the package lists offer,
# else default-jdk-headless when it is Java 17 or newer. Exit 1 when none fits.
choose_jdk() {
  local pkg major
  for pkg in "${JDK_PACKAGES[@]}"; do
    if [ -n "$(candidate "$pkg")" ]; then
      echo "$pkg"
      return 0
    fi
  done
  major=$(default_jdk_major "$(candidate default-jdk-headless)")
  if [ -n "$major" ] && [ "$major" -ge "$MIN_JAVA" ]; then
    echo default-jdk-headless
    return 0
  fi
  return 1
}

# Java major version of the `java` on PATH (0 when there is none).
java_major() {
  if ! command -v java >/dev/null 2>&1; then
    echo 0
    return
  fi
  local spec
  spec=$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
  spec=${spec#1.}  # Java 8 reported 1.8
  spec=${spec%%.*}
  echo "${spec:-0}"
}

updated=0
apt_update() {
  if [ "$updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
}

# apt-get install, after one apt-get update. A temporary policy-rc.d (exit 101) keeps
# Debian from starting the packaged redis-server on 6379, which mab up wants.
apt_install() {
  apt_update
  local own_policy=0 status=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" || status=$?
  if [ "$own_policy" -eq 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
  return "$status"
}

mode=${1:-all}
case "$mode" in
  all | stack | pip | choose-jdk) ;;
  *)
    echo "usage: $0 [stack|pip|choose-jdk]" >&2
    exit 2
    ;;
esac

if [ "$mode" = choose-jdk ]; then
  choose_jdk || {
    echo "error: no JDK >= $MIN_JAVA in the package lists (${JDK_PACKAGES[*]} default-jdk-headless)" >&2
    exit 1
  }
  exit 0
fi

missing=()
need_jdk=0
java_now=0
if [ "$mode" = pip ]; then
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
else
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # redis-cli (Debian: redis-tools) joins the local Redis Cluster (deploy/stack/redis_cluster.py).
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)  # once, to fetch the Kafka jars
  java_now=$(java_major)
  if [ "$java_now" -lt "$MIN_JAVA" ]; then need_jdk=1; fi
  if [ "$mode" = all ]; then
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  fi
fi

if [ "${#missing[@]}" -eq 0 ] && [ "$need_jdk" -eq 0 ]; then
  [ "$mode" = pip ] || echo "system deps ok: java $java_now, mvn, redis-server, redis-cli"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: apt-get not found; install by hand: Java >= $MIN_JAVA ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; then
  # Name the JDK from the lists we can read; with none readable, default-jdk-headless
  # (Java 17 on Debian 12, 21 on Debian 13 and Ubuntu 24.04).
  if [ "$need_jdk" -eq 1 ]; then missing=("$(choose_jdk || echo default-jdk-headless)" "${missing[@]}"); fi
  echo "error: missing ${missing[*]} and not root (no sudo either); as root, run:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

if [ "$need_jdk" -eq 1 ]; then
  # Choose after `apt-get update`: a fresh machine's package lists may be empty.
  apt_update
  if ! jdk=$(choose_jdk); then
    echo "error: no JDK >= $MIN_JAVA among ${JDK_PACKAGES[*]} default-jdk-headless here" >&2
    exit 1
  fi
  if [ "$java_now" -eq 0 ]; then
    echo "java not found: installing $jdk"
  else
    echo "java $java_now is older than $MIN_JAVA (Kafka 4 needs $MIN_JAVA+): installing $jdk"
  fi
  missing=("$jdk" "${missing[@]}")
fi
echo "installing: ${missing[*]}"
apt_install "${missing[@]}"

if [ "$mode" != pip ] && [ "$(java_major)" -lt "$MIN_JAVA" ]; then
  echo "error: java $(java_major) on PATH after the install; pick Java >= $MIN_JAVA with:" >&2
  echo "  ${SUDO:+sudo }update-alternatives --config java" >&2
  exit 1
fi
[ "$mode" = pip ] || echo "system deps ok: java $(java_major), mvn, redis-server, redis-cli"
