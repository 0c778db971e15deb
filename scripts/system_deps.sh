#!/usr/bin/env bash
# Install the Debian packages speechlab's tools call, when they are missing:
#   espeak-ng  (speechlab data synth: the embedded default corpus)
#   cmake, build-essential, Boost program_options/thread/test  (speechlab lm ngram builds
#              KenLM's lmplz/build_binary from the kenlm source package on first use)
# Prints one clear line and exits 1 when it cannot (no apt-get, not root).
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(build-essential)
[ -e /usr/include/boost/program_options.hpp ] || missing+=(libboost-program-options-dev)
[ -e /usr/include/boost/thread.hpp ] || missing+=(libboost-thread-dev)
[ -e /usr/include/boost/test/unit_test.hpp ] || missing+=(libboost-test-dev)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "speechlab: needs ${missing[*]} and this machine has no apt-get: install ${missing[*]} with your package manager, then rerun." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "speechlab: needs ${missing[*]}: run 'apt-get install ${missing[*]}' as root, then rerun." >&2
    exit 1
  fi
fi
echo "speechlab: installing ${missing[*]} with apt-get"
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "speechlab: apt-get could not install ${missing[*]}; install it by hand, then rerun." >&2
  exit 1
fi
