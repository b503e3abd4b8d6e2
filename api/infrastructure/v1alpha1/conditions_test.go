package v1alpha1_test

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cluster-api/util/conditions"

	infrav1 "github.com/liquidmetal-go/liquidmetal/api/infrastructure/v1alpha1"
)

// The controllers drive conditions through Cluster API's utilities.
var (
	_ conditions.Setter = &infrav1.MicrovmCluster{}
	_ conditions.Setter = &infrav1.MicrovmMachine{}
)

// TestConditionsThroughClusterAPIUtilities sets and reads conditions with
// sigs.k8s.io/cluster-api/util/conditions and summarises them into Ready.
func TestConditionsThroughClusterAPIUtilities(t *testing.T) {
	m := &infrav1.MicrovmMachine{ObjectMeta: metav1.ObjectMeta{Generation: 3}}
	conditions.Set(m, metav1.Condition{
		Type:   infrav1.MicrovmReadyCondition,
		Status: metav1.ConditionFalse,
		Reason: infrav1.MicrovmPendingReason,
	})
	c := conditions.Get(m, infrav1.MicrovmReadyCondition)
	if c == nil || c.Reason != infrav1.MicrovmPendingReason || c.ObservedGeneration != 3 {
		t.Fatalf("MicrovmReady = %+v", c)
	}
	if err := conditions.SetSummaryCondition(m, m, infrav1.ReadyCondition,
		conditions.ForConditionTypes{infrav1.MicrovmReadyCondition}); err != nil {
		t.Fatal(err)
	}
	if !conditions.IsFalse(m, infrav1.ReadyCondition) || len(m.Status.Conditions) != 2 {
		t.Fatalf("conditions = %+v", m.Status.Conditions)
	}

	conditions.Set(m, metav1.Condition{
		Type:   infrav1.MicrovmReadyCondition,
		Status: metav1.ConditionTrue,
		Reason: infrav1.MicrovmRunningReason,
	})
	if err := conditions.SetSummaryCondition(m, m, infrav1.ReadyCondition,
		conditions.ForConditionTypes{infrav1.MicrovmReadyCondition}); err != nil {
		t.Fatal(err)
	}
	if !conditions.IsTrue(m, infrav1.ReadyCondition) {
		t.Fatalf("Ready = %+v", conditions.Get(m, infrav1.ReadyCondition))
	}
}
