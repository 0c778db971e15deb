# The study's speech corpus, in one place for the two scripts that render it (sourced by
# run_gpu.sh, which synthesizes all of it, and run_cpu_decode.sh, which re-renders the splits it
# decodes); they set SL (the speechlab command), T (prepare_text_domains.py's output) and D.
#   synth_domain books|reviews LOG [--splits ...]   deterministic by seed, resumable
UTTS_A=${UTTS_A:-10800}; UTTS_B=${UTTS_B:-1900}
FRAC_A=${FRAC_A:-"0.0277778 0.0462963"}   # dev, test: 300 and 500 of 10,800
FRAC_B=${FRAC_B:-"0.1578948 0.3157895"}   # 300 and 600 of 1,900
synth_domain() {
  local name=$1 log=$2 utts seed frac dev test
  case $name in
    books) utts=$UTTS_A seed=141 frac=$FRAC_A ;;
    reviews) utts=$UTTS_B seed=142 frac=$FRAC_B ;;
    *) echo "synth_domain: unknown domain '$name' (books, reviews)" >&2; return 1 ;;
  esac
  shift 2
  read -r dev test <<<"$frac"
  $SL data synth --out "$D/$name" --text "$T/${name}_speech.txt" --utterances "$utts" \
    --seed "$seed" --jobs "${JOBS:-$(nproc)}" --dev-fraction "$dev" --test-fraction "$test" \
    --id-prefix "$name" "$@" >"$log" 2>&1 || { tail -3 "$log"; return 1; }
}
