# shellcheck shell=bash
# Shared by the run_*.sh scripts (sourced, not run): environment defaults, run-folder names,
# skip/resume of finished runs, and a queue that runs one command per GPU slot.
#
# Environment read here (each script documents the ones it uses):
#   GPUS      comma-separated GPU ids, one run at a time on each (default 0); "cpu" or "" = no GPU
#             (CUDA_VISIBLE_DEVICES=""), "all" = one slot that sees every GPU (CUDA_VISIBLE_DEVICES untouched)
#   PER_GPU   runs at a time on each GPU (default 1; CIFAR bs-64 runs leave a large GPU mostly idle)
#   DRY_RUN   1 = print the commands (one per line, comments start with '#') and run nothing
#   PYTHON    interpreter (default python)
#   SAVE      root of save/teachers and save/students (default ./save)
#   LOG_DIR   one log file per run (default $SAVE/logs/<script name>)
#   SKIP_DONE 1 = skip runs whose folder already has summary.json (default 1)
#   RESUME    1 = continue an unfinished run from its <model>_last.pth (default 1)
#   EXTRA_ARGS extra flags appended to every command, last, so they override the script's own (e.g.
#             "--amp --channels_last", or "--epochs 1 --train_subset 500" for a quick end-to-end check)
#   GROUP     1 = pack the train_student.py runs that share a teacher, a dataset and a trial into one
#             train_group.py process per (teacher, dataset, trial): one teacher forward per batch for the
#             whole table row, the same batches for every method (paired); each student is still the run
#             (and writes the folder) its train_student.py command would (default 0)

set -euo pipefail

: "${GPUS=0}"
: "${PER_GPU:=1}"
: "${DRY_RUN:=0}"
: "${PYTHON:=python}"
: "${SAVE:=./save}"
: "${SKIP_DONE:=1}"
: "${RESUME:=1}"
: "${EXTRA_ARGS:=}"

: "${GROUP:=0}"

QUEUE_CMDS=()    # shell-quoted command lines
QUEUE_LABELS=()  # one file-name-safe label per command (its log file)
SKIPPED=0
declare -A GROUP_ROWS=()   # GROUP=1: group key -> its rows, each a shell-quoted --student argument
GROUP_KEYS=()              # group keys in the order they were first seen

note() { echo "# $*"; }

# one shell word per argument: as is when it has no special characters, else single-quoted
shquote() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:,=+@%-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

die() { echo "error: $*" >&2; exit 2; }

# Python's str(float(x)) for the plain decimals of the weight tables: 1 -> 1.0, 0.1 -> 0.1, 3000 -> 3000.0.
# (train_student.py names run folders ..._r:<cls>_a:<div>_b:<beta>_<trial> with these strings.)
pyfloat() {
  [[ $1 =~ ^([0-9]+)(\.([0-9]*))?$ ]] || die "weight '$1' is not a plain non-negative decimal number"
  local int=$((10#${BASH_REMATCH[1]})) frac=${BASH_REMATCH[3]:-}
  while [[ $frac == *0 ]]; do frac=${frac%0}; done
  echo "$int.${frac:-0}"
}

# Weights "-c X -d Y -b Z" -> "X Y Z"
weights_cdb() {
  local c="" d="" b="" a
  read -r -a a <<< "$1"
  local i
  for ((i = 0; i < ${#a[@]}; i += 2)); do
    case ${a[i]} in
      -c) c=${a[i+1]} ;; -d) d=${a[i+1]} ;; -b) b=${a[i+1]} ;;
      *) die "weights '$1': expected -c X -d Y -b Z" ;;
    esac
  done
  [[ -n $c && -n $d && -n $b ]] || die "weights '$1': expected -c X -d Y -b Z"
  echo "$c $d $b"
}

teacher_folder() {  # model dataset trial
  echo "$SAVE/teachers/models/${1}_vanilla_${2}_trial_${3}"
}

# RepDistiller's 11 CIFAR-100 teacher:student pairs (its Tables 1 and 2)
REPD_PAIRS="resnet56:resnet20 resnet110:resnet32 resnet32x4:resnet8x4 wrn_40_2:wrn_16_2 wrn_40_2:wrn_40_1 vgg13:vgg8 ResNet50:MobileNetV2 resnet32x4:ShuffleV1 resnet32x4:ShuffleV2 wrn_40_2:ShuffleV1 vgg13:MobileNetV2"

default_teacher_path() {  # dataset trial -> a TEACHER_PATH pattern, {t} = teacher name
  echo "$(teacher_folder '{t}' "$1" "$2")/{t}_last.pth"
}

# the --distill part of a student folder name: method + "+LS"/"+DOT"/"+RA" for --logit_stand, --optimizer
# dot and a --strong_aug view (mlkd has one unless --strong_aug none), as train_student.method_tag names it
method_tag() {  # distill flags...
  local m=$1 ls="" dot="" ra=""
  [[ $m == mlkd ]] && ra="+RA"
  shift
  while (($#)); do
    case $1 in
      --logit_stand) ls="+LS" ;;
      --optimizer) [[ ${2:-} == dot ]] && dot="+DOT" ;;
      --strong_aug) if [[ ${2:-} == none ]]; then ra=""; else ra="+RA"; fi ;;
    esac
    shift
  done
  echo "$m$ls$dot$ra"
}

student_folder() {  # student teacher dataset distill-tag weights trial
  local c d b
  read -r c d b <<< "$(weights_cdb "$5")"
  echo "$SAVE/students/models/S:${1}_T:${2}_${3}_${4}_r:$(pyfloat "$c")_a:$(pyfloat "$d")_b:$(pyfloat "$b")_${6}"
}

# enqueue LABEL FOLDER PREFIX CMD...: add a run unless it is finished (SKIP_DONE); resume it if it
# has a last checkpoint but no summary (RESUME). FOLDER/PREFIX may be empty (no skip/resume check).
enqueue() {
  local label=$1 folder=$2 prefix=$3
  shift 3
  local -a cmd=("$@")
  if [[ -n $folder ]]; then
    if [[ -f $folder/summary.json ]]; then
      if [[ $SKIP_DONE == 1 ]]; then
        note "done, skipping: $folder"
        SKIPPED=$((SKIPPED + 1))
        return 0
      fi
    elif [[ $RESUME == 1 && -f $folder/${prefix}_last.pth ]]; then
      cmd+=(--resume "$folder/${prefix}_last.pth")
    fi
  fi
  if [[ -n $EXTRA_ARGS ]]; then
    local -a extra
    read -r -a extra <<< "$EXTRA_ARGS"
    cmd+=("${extra[@]}")
  fi
  if [[ $GROUP == 1 && ${cmd[1]:-} == train_student.py ]]; then
    group_row "${cmd[@]}"
    return 0
  fi
  QUEUE_CMDS+=("$(shquote "${cmd[@]}")")
  QUEUE_LABELS+=("$(printf "%s" "$label" | tr -c 'A-Za-z0-9._=+-' '_')")
}

# group_row PYTHON train_student.py ARGS...: file the run as a row of its (teacher, dataset, trial) group
# (its own --resume is dropped: the group resumes every unfinished student with --resume_all)
group_row() {
  local -a row=()
  local path_t="" dataset="" trial="" i
  local -a args=("${@:3}")
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --resume) i=$((i + 1)); continue ;;
      --path_t) path_t=${args[i+1]} ;;
      --dataset) dataset=${args[i+1]} ;;
      --trial) trial=${args[i+1]} ;;
    esac
    row+=("${args[i]}")
  done
  local key="$1|$path_t|$dataset|$trial"
  if [[ -z ${GROUP_ROWS[$key]+x} ]]; then
    GROUP_KEYS+=("$key")
    GROUP_ROWS[$key]=""
  fi
  GROUP_ROWS[$key]+=" --student $(shquote "$(shquote "${row[@]}")")"
}

# flush_groups: one train_group.py command per group of rows (GROUP=1)
flush_groups() {
  local key py t d trial
  for key in "${GROUP_KEYS[@]}"; do
    IFS='|' read -r py t d trial <<< "$key"
    QUEUE_CMDS+=("$(shquote "$py" train_group.py --resume_all)${GROUP_ROWS[$key]}")
    QUEUE_LABELS+=("$(printf "group_%s_%s_trial_%s" "$(basename "$(dirname "$t")")" "$d" "$trial" \
      | tr -c 'A-Za-z0-9._=+-' '_')")
  done
  GROUP_KEYS=()
  GROUP_ROWS=()
}

# run_queue NAME: print (DRY_RUN=1) or run every queued command, one per GPU slot, each with
# CUDA_VISIBLE_DEVICES set to its GPU; the next command goes to the first slot that frees.
# Every command runs even if others fail; the exit status is 1 if any failed.
run_queue() {
  local name=$1
  flush_groups
  local n=${#QUEUE_CMDS[@]}
  local -a gpus slots
  if [[ -z $GPUS || $GPUS == cpu ]]; then
    gpus=(cpu)
  else
    IFS=',' read -r -a gpus <<< "$GPUS"
  fi
  local g k
  for g in "${gpus[@]}"; do
    for ((k = 0; k < PER_GPU; k++)); do slots+=("$g"); done
  done
  note "$name: $n runs to start, $SKIPPED finished runs skipped; GPU slots: ${slots[*]} (one run per slot)"
  if [[ $DRY_RUN == 1 ]]; then
    local c
    for c in "${QUEUE_CMDS[@]}"; do echo "$c"; done
    return 0
  fi
  ((n > 0)) || return 0
  local log_dir=${LOG_DIR:-$SAVE/logs/$name}
  mkdir -p "$log_dir"
  local -a pids labels
  local failed=0 next=0 s
  for s in "${!slots[@]}"; do pids[s]=""; labels[s]=""; done
  # on Ctrl-C / TERM stop the runs this script started (by pid), then exit
  trap 'for p in "${pids[@]}"; do [[ -n $p ]] && kill "$p" 2>/dev/null; done; exit 130' INT TERM

  _reap() {  # slot index -> 0 if the slot is free (reaping its finished run)
    local s=$1 p=${pids[$1]} rc
    [[ -z $p ]] && return 0
    kill -0 "$p" 2>/dev/null && return 1
    if wait "$p"; then rc=0; else rc=$?; fi
    if ((rc != 0)); then
      failed=$((failed + 1))
      echo "FAILED (exit $rc) on ${slots[s]}: ${labels[s]}; last lines of $log_dir/${labels[s]}.log:" >&2
      tail -n 5 "$log_dir/${labels[s]}.log" >&2 || true
    else
      echo "finished on ${slots[s]}: ${labels[s]}"
    fi
    pids[s]=""
    return 0
  }

  while ((next < n)); do
    local started=0
    for s in "${!slots[@]}"; do
      ((next < n)) || break
      if _reap "$s"; then
        local gpu=${slots[s]} label=${QUEUE_LABELS[next]} cmd=${QUEUE_CMDS[next]}
        echo "start on $gpu: $label (log: $log_dir/$label.log)"
        case $gpu in
          all) (eval "exec $cmd") > "$log_dir/$label.log" 2>&1 & ;;
          cpu) (export CUDA_VISIBLE_DEVICES=""; eval "exec $cmd") > "$log_dir/$label.log" 2>&1 & ;;
          *) (export CUDA_VISIBLE_DEVICES="$gpu"; eval "exec $cmd") > "$log_dir/$label.log" 2>&1 & ;;
        esac
        pids[s]=$!
        labels[s]=$label
        next=$((next + 1))
        started=1
      fi
    done
    ((started)) || sleep 0.5
  done
  local busy=1
  while ((busy)); do
    busy=0
    for s in "${!slots[@]}"; do
      _reap "$s" || busy=1
    done
    ((busy)) && sleep 0.5
  done
  trap - INT TERM
  if ((failed > 0)); then
    echo "$name: $failed of $n runs failed (logs in $log_dir)" >&2
    return 1
  fi
  echo "$name: all $n runs finished (logs in $log_dir)"
}
