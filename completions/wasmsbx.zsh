# wasmsbx completion for zsh: static, generated from the CLI by scripts/gen-completions (wasmsbx completions show). Do not edit.
autoload -U +X compinit && { (( $+functions[compdef] )) || compinit; }
autoload -U +X bashcompinit && bashcompinit

_wasmsbx() {
  [ -n "${ZSH_VERSION-}" ] && setopt localoptions ksharrays nullglob
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  local cmd="" i w files=0 dirs=0
  local -a opts=() subs=()
  COMPREPLY=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${COMP_WORDS[i]}
    if [ "$w" = "--" ]; then cmd="--"; break; fi
    case "$cmd" in
      ""|"cache"|"completions"|"mcp"|"policy"|"trust") case "$w" in -*) ;; *) cmd="${cmd:+$cmd }$w" ;; esac ;;
    esac
  done
  case "$cmd:$prev" in  # the value of an option
    --:*) files=1 ;;
    "audit:--policy"|"audit:-p") files=1 ;;
    "audit:--memory") : ;;
    "audit:--fuel") : ;;
    "audit:--timeout") : ;;
    "audit:--stack") : ;;
    "audit:--dir") dirs=1 ;;
    "audit:--dir-ro") dirs=1 ;;
    "audit:--env"|"audit:-e") : ;;
    "audit:--output"|"audit:-o") files=1 ;;
    "audit:--fail-on") subs=(info low medium high) ;;
    "audit:--host-import") : ;;
    "backends:--policy"|"backends:-p") files=1 ;;
    "backends:--kind") : ;;
    "backends:--backend"|"backends:-b") : ;;
    "bench:--suite") files=1 ;;
    "bench:--backend"|"bench:-b") : ;;
    "bench:--iterations"|"bench:-n") : ;;
    "bench:--warmup") : ;;
    "bench:--budget") : ;;
    "bench:--sample-time") : ;;
    "bench:--phase") : ;;
    "bench:--output"|"bench:-o") files=1 ;;
    "bench:--save-baseline") files=1 ;;
    "bench:--baseline") files=1 ;;
    "bench:--fail-on-regression") : ;;
    "bench:--policy"|"bench:-p") files=1 ;;
    "bench:--memory") : ;;
    "bench:--fuel") : ;;
    "bench:--timeout") : ;;
    "bench:--stack") : ;;
    "bench:--dir") dirs=1 ;;
    "bench:--dir-ro") dirs=1 ;;
    "bench:--env"|"bench:-e") : ;;
    "cache clear:--module"|"cache clear:-m") files=1 ;;
    "cache clear:--backend"|"cache clear:-b") : ;;
    "cache clear:--policy"|"cache clear:-p") files=1 ;;
    "cache clear:--cache-dir") files=1 ;;
    "cache list:--policy"|"cache list:-p") files=1 ;;
    "cache list:--cache-dir") files=1 ;;
    "cache path:--policy"|"cache path:-p") files=1 ;;
    "cache path:--cache-dir") files=1 ;;
    "cache prune:--older-than") : ;;
    "cache prune:--max-size") : ;;
    "cache prune:--policy"|"cache prune:-p") files=1 ;;
    "cache prune:--cache-dir") files=1 ;;
    "cache stats:--policy"|"cache stats:-p") files=1 ;;
    "cache stats:--cache-dir") files=1 ;;
    "cache verify:--policy"|"cache verify:-p") files=1 ;;
    "cache verify:--cache-dir") files=1 ;;
    "compile:--output"|"compile:-o") files=1 ;;
    "compile:--backend"|"compile:-b") : ;;
    "compile:--export") : ;;
    "compile:--policy"|"compile:-p") files=1 ;;
    "compile:--cache-dir") files=1 ;;
    "mcp:--policy"|"mcp:-p") files=1 ;;
    "mcp:--host") : ;;
    "mcp:--port") : ;;
    "mcp:--token-file") files=1 ;;
    "mcp:--module-dir") : ;;
    "mcp:--max-request") : ;;
    "mcp:--max-concurrent") : ;;
    "mcp:--calls-per-minute") : ;;
    "mcp:--rate-window") : ;;
    "mcp:--max-output") : ;;
    "mcp:--session-cpu") : ;;
    "mcp:--session-memory") : ;;
    "mcp:--session-idle") : ;;
    "mcp:--max-sessions") : ;;
    "mcp:--grace") : ;;
    "mcp:--audit-log") files=1 ;;
    "mcp:--request-timeout") : ;;
    "mcp:--max-connections") : ;;
    "mcp setup:--policy"|"mcp setup:-p") files=1 ;;
    "policy show:--policy"|"policy show:-p") files=1 ;;
    "policy show:--backend"|"policy show:-b") : ;;
    "policy show:--memory") : ;;
    "policy show:--fuel") : ;;
    "policy show:--timeout") : ;;
    "policy show:--stack") : ;;
    "policy show:--dir") dirs=1 ;;
    "policy show:--dir-ro") dirs=1 ;;
    "policy show:--env"|"policy show:-e") : ;;
    "run:--policy"|"run:-p") files=1 ;;
    "run:--backend"|"run:-b") : ;;
    "run:--memory") : ;;
    "run:--fuel") : ;;
    "run:--timeout") : ;;
    "run:--stack") : ;;
    "run:--dir") dirs=1 ;;
    "run:--dir-ro") dirs=1 ;;
    "run:--env"|"run:-e") : ;;
    "run:--invoke") : ;;
    "run:--audit-log") files=1 ;;
    "run:--batch") files=1 ;;
    "run:--jobs"|"run:-j") : ;;
    "run:--cluster") : ;;
    "run:--chunk-size") : ;;
    "run:--checkpoint") files=1 ;;
    "run:--cache-dir") files=1 ;;
    "run:--artifact") files=1 ;;
    "trust add:--name"|"trust add:-n") : ;;
    "watch:--source") files=1 ;;
    "watch:--also") files=1 ;;
    "watch:--policy"|"watch:-p") files=1 ;;
    "watch:--backend"|"watch:-b") : ;;
    "watch:--memory") : ;;
    "watch:--fuel") : ;;
    "watch:--timeout") : ;;
    "watch:--stack") : ;;
    "watch:--dir") dirs=1 ;;
    "watch:--dir-ro") dirs=1 ;;
    "watch:--env"|"watch:-e") : ;;
    "watch:--debounce") : ;;
    *)
      case "$cmd" in
        "") opts=(--version -V --help -h); subs=(audit backends bench cache compile completions mcp policy run trust watch); files=0 ;;
        "audit") opts=(--policy -p --memory --fuel --timeout --stack --dir --dir-ro --env -e --json --sarif --suggest-policy --output -o --fail-on --host-import --help -h); subs=(); files=1 ;;
        "backends") opts=(--explain --policy -p --kind --backend -b --json --help -h); subs=(); files=0 ;;
        "bench") opts=(--suite --backend -b --iterations -n --warmup --budget --sample-time --phase --json --output -o --save-baseline --baseline --fail-on-regression --policy -p --memory --fuel --timeout --stack --dir --dir-ro --env -e --help -h); subs=(); files=1 ;;
        "cache") opts=(--help -h); subs=(clear list path prune stats verify); files=0 ;;
        "cache clear") opts=(--module -m --backend -b --policy -p --cache-dir --json --help -h); subs=(); files=0 ;;
        "cache list") opts=(--policy -p --cache-dir --json --help -h); subs=(); files=0 ;;
        "cache path") opts=(--policy -p --cache-dir --json --help -h); subs=(); files=0 ;;
        "cache prune") opts=(--older-than --max-size --policy -p --cache-dir --json --help -h); subs=(); files=0 ;;
        "cache stats") opts=(--policy -p --cache-dir --json --help -h); subs=(); files=0 ;;
        "cache verify") opts=(--keep --policy -p --cache-dir --json --help -h); subs=(); files=0 ;;
        "compile") opts=(--output -o --backend -b --all-backends --export --policy -p --cache-dir --force --sign --interruptible --json --help -h); subs=(); files=1 ;;
        "completions") opts=(--help -h); subs=(install show); files=0 ;;
        "completions install") opts=(--help -h); subs=(); files=0 ;;
        "completions show") opts=(--help -h); subs=(); files=0 ;;
        "mcp") opts=(--policy -p --http --host --port --allow-remote --token-file --module-dir --max-request --max-concurrent --calls-per-minute --rate-window --max-output --session-cpu --session-memory --session-idle --max-sessions --grace --audit-log --request-timeout --max-connections --help -h); subs=(setup); files=0 ;;
        "mcp setup") opts=(--policy -p --force --no-compile --help -h); subs=(); files=0 ;;
        "policy") opts=(--help -h); subs=(show); files=0 ;;
        "policy show") opts=(--policy -p --backend -b --memory --fuel --timeout --stack --dir --dir-ro --env -e --json --help -h); subs=(); files=0 ;;
        "run") opts=(--policy -p --backend -b --memory --fuel --timeout --stack --dir --dir-ro --env -e --invoke --json --stats --explain --no-cache --audit-log --batch --jobs -j --fresh --cluster --stream --chunk-size --checkpoint --cache-dir --artifact --help -h); subs=(); files=1 ;;
        "trust") opts=(--help -h); subs=(add keygen list remove rotate show); files=0 ;;
        "trust add") opts=(--name -n --json --help -h); subs=(); files=0 ;;
        "trust keygen") opts=(--force --json --help -h); subs=(); files=0 ;;
        "trust list") opts=(--json --help -h); subs=(); files=0 ;;
        "trust remove") opts=(--json --help -h); subs=(); files=0 ;;
        "trust rotate") opts=(--json --help -h); subs=(); files=0 ;;
        "trust show") opts=(--json --help -h); subs=(); files=0 ;;
        "watch") opts=(--source --also --policy -p --backend -b --memory --fuel --timeout --stack --dir --dir-ro --env -e --debounce --clear --poll --no-cache --json --help -h); subs=(); files=1 ;;
        *) files=1 ;;
      esac
      if [[ $cur == -* ]]; then subs=("${opts[@]}"); files=0; fi ;;
  esac
  for w in "${subs[@]}"; do [[ $w == "$cur"* ]] && COMPREPLY+=("$w"); done
  if [ "$files" = 1 ] || [ "$dirs" = 1 ]; then
    for w in "$cur"*; do
      if [ -d "$w" ] || { [ "$files" = 1 ] && [ -e "$w" ]; }; then COMPREPLY+=("$w"); fi
    done
  fi
  return 0
}
complete -o filenames -o bashdefault -F _wasmsbx wasmsbx
