{{/* Names and labels shared by the templates. */}}

{{- define "lvs-operator.commonLabels" -}}
app.kubernetes.io/part-of: lvs-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}

{{- define "lvs-operator.labels" -}}
{{ include "lvs-operator.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lvs-operator.controllerSelector" -}}
app.kubernetes.io/name: lvs-operator
app.kubernetes.io/component: controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The names of imagePullSecrets, comma-separated (the controller's flag for the agents). */}}
{{- define "lvs-operator.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}{{- $names = append $names .name -}}{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{- define "lvs-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "lvs-operator.directorImage" -}}
{{- $repo := .Values.director.image.repository | default .Values.image.repository -}}
{{- $tag := .Values.director.image.tag | default .Values.image.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* Checks the JSON schema cannot express; each fails with a message naming the values. */}}
{{- define "lvs-operator.validate" -}}
{{- $kube := .Capabilities.KubeVersion.Version -}}
{{- if and (not (hasPrefix "v0.0.0" $kube)) (semverCompare "<1.31.0-0" $kube) -}}
{{- fail (printf "Kubernetes %s is too old for lvs-operator: its CRDs' validation rules use the CEL IP library of Kubernetes 1.31 or later" $kube) -}}
{{- end -}}
{{- range $i, $r := .Values.vipRanges -}}
{{- if not (regexMatch "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/(3[0-2]|[12]?[0-9])|[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$" $r) -}}
{{- fail (printf "vipRanges[%d] = %q is not a network in CIDR notation: an IPv4 address with a /0-32 prefix (e.g. 192.0.2.0/24) or an IPv6 address with a /0-128 prefix (e.g. 2001:db8::/64)" $i $r) -}}
{{- end -}}
{{- end -}}
{{- $t := .Values.director.timings -}}
{{- if and $t.leaseDurationSeconds $t.renewDeadlineSeconds -}}
{{- if ge (float64 $t.renewDeadlineSeconds) (float64 $t.leaseDurationSeconds) -}}
{{- fail (printf "director.timings.renewDeadlineSeconds (%v) must be less than director.timings.leaseDurationSeconds (%v): a director must step down before its Lease can expire" $t.renewDeadlineSeconds $t.leaseDurationSeconds) -}}
{{- end -}}
{{- end -}}
{{- if and $t.renewDeadlineSeconds $t.retryPeriodSeconds -}}
{{- if ge (float64 $t.retryPeriodSeconds) (float64 $t.renewDeadlineSeconds) -}}
{{- fail (printf "director.timings.retryPeriodSeconds (%v) must be less than director.timings.renewDeadlineSeconds (%v): a director must retry renewing before its deadline" $t.retryPeriodSeconds $t.renewDeadlineSeconds) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.controller.healthPort) (int .Values.controller.metricsPort) -}}
{{- fail (printf "controller.healthPort and controller.metricsPort must differ (both are %v): the controller serves both" .Values.controller.healthPort) -}}
{{- end -}}
{{- if eq (int .Values.director.healthPort) (int .Values.director.metricsPort) -}}
{{- fail (printf "director.healthPort and director.metricsPort must differ (both are %v): the agents serve both on the node's network" .Values.director.healthPort) -}}
{{- end -}}
{{- /* On a live install only (lookup finds nothing under helm template or Argo CD): a namespace
     whose Pod Security label refuses the director agents' pods fails the install now, rather
     than leave DaemonSets whose pods are never created. */ -}}
{{- $ns := lookup "v1" "Namespace" "" .Release.Namespace -}}
{{- if $ns -}}
{{- $enforce := get ($ns.metadata.labels | default dict) "pod-security.kubernetes.io/enforce" -}}
{{- if and $enforce (ne $enforce "privileged") -}}
{{- fail (printf "namespace %s enforces Pod Security %q, which refuses the director agents' pods (hostNetwork, NET_ADMIN, NET_RAW): allow them with: kubectl label namespace %s pod-security.kubernetes.io/enforce=privileged --overwrite" .Release.Namespace $enforce .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.serviceAccount.name .Values.director.serviceAccount.name -}}
{{- fail (printf "serviceAccount.name and director.serviceAccount.name must differ (both are %q): the controller and the agents get different permissions" .Values.serviceAccount.name) -}}
{{- end -}}
{{- end -}}
